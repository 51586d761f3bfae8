"""`python -m heartml` runs the CLI; so does this file run as a script (spark-submit runs it so)."""

from heartml.cli import main

# Guarded: a script's spawned children (the model's download) import it again as __mp_main__.
if __name__ == "__main__":
    main()
