"""Serving: the FastAPI app that serves the registry's champion and follows promotions.

Importing this package does nothing; ``heartml.serve.app.create_app`` builds the app and
``heartml.serve.server.run_server`` runs it under uvicorn.
"""
