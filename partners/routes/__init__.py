"""The delivery service's routes, one router per thing a partner works on."""
