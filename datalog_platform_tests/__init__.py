"""Tests of datalog_platform; a package so helper modules import the same way however pytest is started."""
