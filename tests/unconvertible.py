"""A model that some deploy runtimes cannot take: its registered custom layer takes a cumulative
product, which ONNX has (CumProd), LiteRT runs only with TensorFlow's own kernel (a Flex op the
LiteRT interpreter lacks), and OpenVINO's converter has no rule for."""

import keras


@keras.saving.register_keras_serializable(package="tests_unconvertible")
class CumulativeProduct(keras.layers.Layer):
    def call(self, x):
        return x * keras.ops.cumprod(1.0 + 0.01 * keras.ops.tanh(x), axis=1)


def model(input_shape: tuple, num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(CumulativeProduct()(x)), name="unconvertible")
