"""Producer web apps in the users' style (FastAPI, Flask); they only import myapp."""
