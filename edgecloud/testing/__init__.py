"""Rigs shared by the tests and the benchmarks (neither imports the other): small GGUF models
made here, a throwaway PostgreSQL server, a faulty network link, a stand-in attestation
service and its TLS material, and the fault campaign (`edgecloud.testing.chaos`)."""
