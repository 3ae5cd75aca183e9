//! SIP message view: a tolerant, zero-copy reading of just the headers siptap needs.
pub mod frame;
pub mod parse;
pub mod uri;

pub use parse::{Contact, Message, NameAddr, ParseError, StartLine, parse};
