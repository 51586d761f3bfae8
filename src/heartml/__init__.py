"""heartml: heart-disease risk models from training to a served, monitored deployment."""

__version__ = "0.1.0"
