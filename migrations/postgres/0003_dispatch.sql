-- SQS mode (TETHER_QUEUE=sqs): the dispatch outbox. The accept transaction writes one row per new
-- command (a replay, or the safety net for a message SQS lost, writes another); the dispatcher
-- sends it to the command queue with SendMessageBatch and deletes it once SQS took it. Like the
-- outbox, a dispatcher takes rows for a short while so two processes do not send the same rows
-- at once; a message sent twice is harmless (the command row's lease and state decide).
CREATE TABLE dispatch (
    trace_id      TEXT PRIMARY KEY,
    created_at    BIGINT NOT NULL,
    claimed_by    TEXT,
    claimed_until BIGINT
);
CREATE INDEX dispatch_order ON dispatch (created_at);
