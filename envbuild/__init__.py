"""envbuild: environments you can prove are what you built, wherever they run."""

__version__ = "0.1.0"

# Bumped whenever the bytes a build produces change for the same inputs: part of env_key.
BUILD_FORMAT = "envbuild.build/3"
