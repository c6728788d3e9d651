//! CommandBuilder: command type → handler, through the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::CommandError;
use crate::ports::Invokable;

/// The handlers this process can run, by command type.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<&'static str, Arc<dyn Invokable>>,
}

impl Registry {
    pub fn new(handlers: impl IntoIterator<Item = Arc<dyn Invokable>>) -> Self {
        Self {
            handlers: handlers
                .into_iter()
                .map(|h| (h.command_type(), h))
                .collect(),
        }
    }

    pub fn get(&self, command_type: &str) -> Option<&Arc<dyn Invokable>> {
        self.handlers.get(command_type)
    }

    pub fn command_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }

    /// Finds the handler for a claimed command. A command type nobody handles is permanent:
    /// retrying cannot help.
    pub fn build(&self, command_type: &str) -> Result<Arc<dyn Invokable>, CommandError> {
        self.get(command_type).cloned().ok_or_else(|| {
            CommandError::Malformed(format!("no handler is registered for `{command_type}`"))
        })
    }
}
