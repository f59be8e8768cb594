//! Services, configuration, wiring and lifecycle.
