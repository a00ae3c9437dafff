"""A registered custom layer that only exists once this module is imported: for the missing-class tests."""

import keras


@keras.saving.register_keras_serializable(package="tests_custom")
class Shift(keras.layers.Layer):
    def __init__(self, amount: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    def call(self, inputs):
        return inputs + self.amount

    def get_config(self):
        return {**super().get_config(), "amount": self.amount}
