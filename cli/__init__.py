"""The mydocker command line: parses, calls the services' stubs, prints."""
