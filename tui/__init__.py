"""ppchat.tui"""
