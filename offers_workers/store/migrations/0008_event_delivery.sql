-- What each event's delivery got back: EventBridge's event id and SNS's MessageId, so a
-- notification a subscriber says it never received can be looked up with SNS by its id.
ALTER TABLE offer_events ADD COLUMN bus_event_id text, ADD COLUMN sns_message_id text;
-- `offers show` lists an offer's events, and the cancellation path asks whether one was published.
CREATE INDEX offer_events_offer_idx ON offer_events (offer_id);
