"""The tutorial done by hand: what a user would write instead of running the pipeline.

TensorFlow's "Save and load models": the first 1000 MNIST examples, the tutorial's
MLP, 10 epochs with a weights checkpoint every epoch, then the model saved as .keras,
.h5 and a SavedModel and each loaded back and checked. Prints one JSON line with the
seconds spent after imports and the restored accuracy, for benchmarks/run.py.

    python benchmarks/plain_keras.py OUTPUT_DIR [EXAMPLES] [EPOCHS]   (default 1000 and 10)
"""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

start = time.perf_counter()
out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
os.makedirs(out, exist_ok=True)

if os.environ.get("MNIST_NPZ"):
    with np.load(os.environ["MNIST_NPZ"]) as f:
        (train_images, train_labels), (test_images, test_labels) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
else:
    try:
        (train_images, train_labels), (test_images, test_labels) = keras.datasets.mnist.load_data()
    except Exception as error:  # no network: say what to do, as the pipeline does
        sys.exit(f"error: could not download MNIST ({str(error).splitlines()[0]}); set MNIST_NPZ to a local mnist.npz")
train_labels, test_labels = train_labels[:n], test_labels[:n]
train_images = train_images[:n].reshape(-1, 28 * 28) / 255.0
test_images = test_images[:n].reshape(-1, 28 * 28) / 255.0


def create_model():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[keras.metrics.SparseCategoricalAccuracy()])
    return model


keras.utils.set_random_seed(42)
model = create_model()
checkpoint = keras.callbacks.ModelCheckpoint(filepath=os.path.join(out, "cp-{epoch:04d}.weights.h5"), save_weights_only=True, verbose=0)
model.fit(train_images, train_labels, epochs=epochs, batch_size=32, validation_data=(test_images, test_labels), callbacks=[checkpoint], verbose=0)
expected = model.predict(test_images, verbose=0)

model.save(os.path.join(out, "model.keras"))
model.save(os.path.join(out, "model.h5"))
model.export(os.path.join(out, "saved_model"), verbose=False)

restored = {
    "keras": keras.models.load_model(os.path.join(out, "model.keras")),
    "h5": keras.models.load_model(os.path.join(out, "model.h5")),
}
serving = tf.saved_model.load(os.path.join(out, "saved_model"))
untrained = create_model()  # the tutorial's baseline: about 10% before any weights are loaded
untrained_accuracy = float(np.mean(np.argmax(untrained.predict(test_images, verbose=0), axis=-1) == test_labels))
latest = create_model()
latest.load_weights(os.path.join(out, f"cp-{epochs:04d}.weights.h5"))
predictions = {name: m.predict(test_images, verbose=0) for name, m in {**restored, "checkpoint": latest}.items()}
predictions["savedmodel"] = serving.serve(tf.constant(test_images, tf.float32)).numpy()
for name, logits in predictions.items():
    assert np.allclose(logits, expected, atol=1e-5), name
accuracy = float(np.mean(np.argmax(predictions["keras"], axis=-1) == test_labels))

print(json.dumps({"work_seconds": time.perf_counter() - start, "untrained_accuracy": untrained_accuracy, "restored_accuracy": accuracy}))
