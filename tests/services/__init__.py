"""Real services (schedulers, daemons) that tests start on this machine, each as a session fixture."""
