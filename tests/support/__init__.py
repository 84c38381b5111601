"""What the tests share: paths to ../shared, the tokens, one image factory, waiting on conditions, fakes at the
boundaries we cannot run here, and the fixtures (tests/support/fixtures.py, registered by tests/conftest.py)."""
