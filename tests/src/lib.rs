//! End-to-end tests across processes live here once the API and executor
//! exist; the crate keeps shared harness code for them.
