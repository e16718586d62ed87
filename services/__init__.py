"""The GridDispatch services. Each sub-package is one deployable; they share only `shared/`."""
