"""The HTTP face of the admin: FastAPI app, auth, request and response models, upload parsing, routes."""
