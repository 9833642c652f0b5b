"""Private buses for programs and tests: busd-run-session (run_session) and the busd_session pytest fixture (pytest_plugin)."""
