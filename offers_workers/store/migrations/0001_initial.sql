-- Makers' offer policies and their listings, loaded with `offers-workers policy load`.
CREATE TABLE makers (
    maker_id               text PRIMARY KEY,
    display_name           text,
    min_offer_cents        bigint      NOT NULL DEFAULT 1 CHECK (min_offer_cents >= 1),
    -- Offers below this percentage of the asking price are rejected at once.
    auto_reject_below_pct  numeric(5,2) NOT NULL DEFAULT 0 CHECK (auto_reject_below_pct BETWEEN 0 AND 100),
    accepts_bank_payments  boolean     NOT NULL DEFAULT true,
    sla_hours              integer     NOT NULL DEFAULT 48 CHECK (sla_hours > 0),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE listings (
    listing_id          text PRIMARY KEY,
    maker_id            text        NOT NULL REFERENCES makers (maker_id),
    title               text,
    asking_price_cents  bigint      NOT NULL CHECK (asking_price_cents > 0),
    currency            char(3)     NOT NULL,
    status              text        NOT NULL CHECK (status IN ('active', 'paused', 'sold', 'withdrawn')),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE offers (
    offer_id              text PRIMARY KEY,
    listing_id            text        NOT NULL,
    maker_id              text        NOT NULL,
    buyer_id              text        NOT NULL,
    amount_cents          bigint      NOT NULL,
    currency              char(3)     NOT NULL,
    payment_method        text        NOT NULL CHECK (payment_method IN ('card', 'bank_account')),
    payload               jsonb       NOT NULL,
    -- sha256 of the canonical body: a resend with the same id but another body is a conflict.
    body_sha256           text        NOT NULL,
    synthetic             boolean     NOT NULL DEFAULT false,
    state                 text        NOT NULL,
    reason                text,
    payment_intent_id     text,
    hold_status           text        NOT NULL DEFAULT 'none' CHECK (hold_status IN ('none', 'held', 'released')),
    risk_score            double precision,
    return_risk_score     integer,
    -- One timestamp per stage, so stats and SLOs are exact from Postgres.
    received_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    validated_at          timestamptz,
    payment_held_at       timestamptz,
    risk_cleared_at       timestamptz,
    auction_triggered_at  timestamptz,
    completed_at          timestamptz,
    rejected_at           timestamptz,
    cancelled_at          timestamptz,
    dead_lettered_at      timestamptz,
    hold_released_at      timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX offers_state_updated_idx ON offers (state, updated_at);
CREATE INDEX offers_received_idx ON offers (received_at);
CREATE INDEX offers_hold_idx ON offers (hold_status) WHERE hold_status = 'held';

-- Messages sent to offers.submit that did not yield a usable offer.
CREATE TABLE intake_rejections (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    task_id      text,
    offer_id     text,
    reason       text        NOT NULL,
    errors       jsonb       NOT NULL,
    raw_body     text        NOT NULL,
    raw_size     integer     NOT NULL
);
CREATE INDEX intake_rejections_received_idx ON intake_rejections (received_at);

-- Every state transition and every operator action, in order.
CREATE TABLE audit_events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    offer_id    text,
    kind        text        NOT NULL,
    from_state  text,
    to_state    text,
    reason      text,
    actor       text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_events_offer_idx ON audit_events (offer_id, id);

-- Outbox of events for EventBridge/SNS: written with the transition, published after commit.
CREATE TABLE offer_events (
    event_id      text PRIMARY KEY,
    offer_id      text        NOT NULL REFERENCES offers (offer_id),
    detail_type   text        NOT NULL,
    detail        jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);
CREATE INDEX offer_events_pending_idx ON offer_events (created_at) WHERE published_at IS NULL;

-- Durable dead-letter queues, one per stage (the `stage` column).
CREATE TABLE dead_letters (
    id               bigserial PRIMARY KEY,
    stage            text        NOT NULL,
    task_name        text        NOT NULL,
    offer_id         text,
    kwargs           jsonb       NOT NULL,
    error_type       text        NOT NULL,
    error_message    text        NOT NULL,
    traceback        text,
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_failed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    replay_count     integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'replayed', 'discarded')),
    resolved_at      timestamptz,
    resolution       text
);
-- At most one open entry per offer and stage: a second failure raises the existing entry's counters.
CREATE UNIQUE INDEX dead_letters_open_idx ON dead_letters (stage, offer_id) WHERE status = 'pending';
