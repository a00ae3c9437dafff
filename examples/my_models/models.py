"""Three ways a user writes a Keras model, each made by a callable the pipeline calls with
`input_shape`, `num_classes` and the other keys of the `model` config."""

import keras

from my_models.layers import Scale


@keras.saving.register_keras_serializable(package="my_models")
class Classifier(keras.Model):
    """A subclassed model: flatten, a hidden layer, the custom Scale layer, logits.
    Registered and with get_config, so .keras files and MLflow can rebuild it by name."""

    def __init__(self, num_classes: int, width: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.width = num_classes, width
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.scale = Scale()
        self.logits = keras.layers.Dense(num_classes)

    def call(self, x):
        return self.logits(self.scale(self.hidden(self.flatten(x))))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "width": self.width}


def subclassed(input_shape: tuple, num_classes: int, width: int = 64) -> keras.Model:
    """Left uncompiled: the pipeline compiles it from `training`."""
    return Classifier(num_classes, width, name="classifier")


def functional(input_shape: tuple, num_classes: int, width: int = 64, learning_rate: float = 0.002) -> keras.Model:
    """A functional model that compiles itself: the pipeline keeps and logs its compile config."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu")(x)
    x = Scale()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    model = keras.Model(inputs, outputs, name="functional")
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
