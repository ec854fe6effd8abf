"""Human labeling: the web app, its SQLite store, queues and export."""
