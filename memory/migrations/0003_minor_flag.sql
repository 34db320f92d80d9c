-- A user who declared a date of birth under 18 is a minor from then on, for good:
-- adult routes are refused whatever they declare later.
ALTER TABLE users ADD COLUMN minor_since timestamptz;
