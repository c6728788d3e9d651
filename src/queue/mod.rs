//! Message queues outside the database. The default command queue is the `commands` table
//! itself (see `store`); with `--queue sqs` commands travel through Amazon SQS instead, and
//! side-effect events can be published to a second SQS queue.

pub mod sqs;

pub use sqs::{SqsCommandQueue, SqsPublisher};
