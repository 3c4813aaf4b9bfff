"""Keys and encryption: key providers, envelope encryption of data that leaves the process."""
