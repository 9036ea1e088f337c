"""Provider integrations: unit tests with fakes, and end-to-end tests over HTTP."""
