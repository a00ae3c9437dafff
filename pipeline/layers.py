"""The pipeline's own custom layer, registered with Keras so every save format can carry it.

It lives apart from the architectures so that code which only needs the class to be
registered (loading a saved model, `inspect`) can import it without building anything.
"""

import keras


@keras.saving.register_keras_serializable(package="pipeline")
class ResidualDense(keras.layers.Layer):
    """relu(x + Dense(Dropout(Dense(x)))): a custom layer that every save format must carry.

    Registration plus `get_config` is what lets `.keras`, `.h5` and SavedModel
    rebuild it without the user passing `custom_objects`.
    """

    def __init__(self, units: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dropout = dropout
        self.inner = keras.layers.Dense(units, activation="relu", name="inner")
        self.drop = keras.layers.Dropout(dropout)
        self.outer = keras.layers.Dense(units, name="outer")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.units))

    def call(self, inputs, training=None):
        return keras.activations.relu(inputs + self.outer(self.drop(self.inner(inputs), training=training)))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}
