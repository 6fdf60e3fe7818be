"""Push notifications of incoming calls: device tokens, call monitors, APNs and FCM senders."""
