//! How a command ends: the exit code and the message for the user.

use std::fmt;

/// 1: the work ran and failed. 2: bad usage or bad input.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn failure(message: impl Into<String>) -> Self {
        Exit {
            code: 1,
            message: message.into(),
        }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Exit {
            code: 2,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type CmdResult = Result<(), Exit>;
