"""ppchat.models"""
