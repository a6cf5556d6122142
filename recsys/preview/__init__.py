"""The operator's preview: a read-only web app over the published homepages."""
