"""A custom layer, registered so that every Keras format can name it in a saved config."""

import keras


@keras.saving.register_keras_serializable(package="my_models")
class Scale(keras.layers.Layer):
    """Multiply by one learned factor per feature."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="factor")

    def call(self, x):
        return x * self.factor
