-- Hours of a service's minutes already committed to the journal as a
-- `measurements.recorded` event (so that each hour is journaled once).
CREATE TABLE measured (
    service TEXT NOT NULL,
    env TEXT NOT NULL,
    hour INTEGER NOT NULL,
    PRIMARY KEY (service, env, hour)
);
