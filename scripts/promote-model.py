#!/usr/bin/env python3
"""Promote models in the MLflow registry: `heartml promote` as a stand-alone script.

    python scripts/promote-model.py --list
    python scripts/promote-model.py --auto
    python scripts/promote-model.py heart-disease-logistic_regression [VERSION]

Same flags and exit codes as `heartml promote` (see --help).
"""

from heartml.cli import promote_main

if __name__ == "__main__":
    promote_main()
