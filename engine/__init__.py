"""ppchat.engine"""
