"""Baichuan2 supervised fine-tuning. Importing the package registers the native Baichuan2 classes
with transformers' Auto classes, so official checkpoint directories load without trust_remote_code."""

from .models.baichuan import register as _register_baichuan

_register_baichuan()

__version__ = "0.1.0"
