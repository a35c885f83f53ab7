//! Helpers shared by the integration tests: start the real server, speak the protocol.
