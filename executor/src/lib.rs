//! The executor daemon: claims runs of its host from the spool and runs their
//! guarded commands. Not built yet: see the project's open issue for it.
