-- Notifications are durable: one row per (notice, channel), written before
-- anyone is told and kept until delivered or given up, so a notification
-- survives a restart of the server and is retried with backoff for hours.
-- `webhook_id` is the notification's identity across every retry (the
-- Standard Webhooks `webhook-id`), so a receiver can drop the repeats.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    webhook_id  TEXT NOT NULL UNIQUE,
    channel     INTEGER NOT NULL,
    incident    INTEGER NOT NULL,
    event       TEXT NOT NULL,
    -- What is sent: JSON {service, body, line, text}, fixed when queued.
    notice      TEXT NOT NULL,
    -- pending | delivered | failed
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT NOT NULL,
    last_detail TEXT,
    created_at  TEXT NOT NULL,
    done_at     TEXT
);
CREATE INDEX outbox_due ON outbox(status, next_at);
CREATE INDEX outbox_incident ON outbox(incident);
