"""Publishing slates to the database the site reads (see db.py for the protocol)."""
