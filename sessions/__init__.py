"""ppchat.sessions"""
