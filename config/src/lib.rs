//! Policy, profiles, action catalog and command guard (being built).
