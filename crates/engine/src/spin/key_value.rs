//! Key-value stores of a Spin app (`fermyon:spin/key-value`): a component
//! opens the labels its `key_value_stores` lists. Store `default` is kept
//! in memory for the container (crate::key_value's [`MemoryStore`], capped)
//! unless runtime config says otherwise (runtime_config.rs); the
//! container's stores are shared by its components and its requests, and
//! gone when it ends.
use std::collections::HashMap;
use std::sync::Arc;

use crate::key_value::Backend;
pub(crate) use crate::key_value::MemoryStore;

/// The stores of a container, by label.
pub(crate) type Stores = HashMap<String, Arc<dyn Backend>>;
