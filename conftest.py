# The plugin's own tests drive pytest in-process with `pytester`; enabling it
# here (the rootdir conftest) makes it available to every test module.
pytest_plugins = ["pytester"]
