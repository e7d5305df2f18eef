-- E-mail channels: how to reach the relay (`none`, `starttls`, `tls`:
-- implicit TLS) and whom to log in as (the password is the channel's
-- secret).
ALTER TABLE channels ADD COLUMN smtp_tls TEXT;
ALTER TABLE channels ADD COLUMN smtp_user TEXT;
