//! Cloister's in-VM test agent.
//!
//! The agent runs inside a Linux that Cloister boots (the host kernel today,
//! the guest kernel later), executes one e2e scenario and reports what it saw
//! over a dedicated channel. It reports facts and checks; the host-side runner
//! (`cargo xtask test`) decides whether they match the stack's expectations.
//!
//! [`protocol`] is the one definition of that channel, shared by the agent and
//! the runner so the two can never drift.

pub mod parse;
pub mod protocol;
/// The test secret, defined once with the guest agent that also writes it.
pub use cloister_guest_agent::secret;
