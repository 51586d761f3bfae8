"""The data stage: the schema, the UCI files (download, sha256), validation, the drift profile."""
