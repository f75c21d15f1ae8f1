//! The HTTP handler functions (local server and Lambda). Not built yet: see
//! the project's open issue for it.
