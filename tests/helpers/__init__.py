"""What several test files share: model builders and the browser client. Fixtures live in conftest.py."""
