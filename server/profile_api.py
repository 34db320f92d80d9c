"""What the companion has come to understand about the signed-in user: personality and goals.

``GET /api/v1/me/profile`` shows the Big Five estimates (score, confidence,
how many observations) and the goals with their progress notes; the user
can correct a goal's status, forget a goal, or forget the personality
estimate (and every observation behind it). The export (``/me/export``)
also lists each observation with the words that caused it.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter

from memory.accounts import Caller
from memory.db import BIGINT_MAX
from memory.profile import Profile, ProfileStore
from memory.profile_rules import GoalStatus
from server.auth import resolve_user

# A goal's id in a path: a positive bigint.
GoalId = Annotated[int, Parameter(ge=1, le=BIGINT_MAX)]


class GoalUpdate(msgspec.Struct, forbid_unknown_fields=True):
    status: GoalStatus


def profile_store(state: State) -> ProfileStore:
    """The profile store over the app's pool (a dependency of `ProfileController`)."""
    return ProfileStore(state.resources.pool)


class ProfileController(Controller):
    path = "/api/v1/me"
    tags = ["profile"]
    opt = {"rate_limit": "api"}
    dependencies = {
        "user": Provide(resolve_user),
        "profiles": Provide(profile_store, sync_to_thread=False),
    }

    @get("/profile")
    async def profile(self, profiles: ProfileStore, user: NamedDependency[Caller]) -> Profile:
        """Personality estimates and goals, most recently updated goal first."""
        return await profiles.profile(uuid.UUID(user.user_id))

    @patch("/goals/{goal_id:int}")
    async def set_goal_status(
        self,
        goal_id: GoalId,
        data: JSONBody[GoalUpdate],
        profiles: ProfileStore,
        user: NamedDependency[Caller],
    ) -> None:
        """Mark a goal achieved, abandoned or active again; 404 if not the user's."""
        if not await profiles.set_status(uuid.UUID(user.user_id), goal_id, data.status):
            raise NotFoundException("goal not found")

    @delete("/goals/{goal_id:int}")
    async def forget_goal(
        self, goal_id: GoalId, profiles: ProfileStore, user: NamedDependency[Caller]
    ) -> None:
        """Forget a goal and its notes; 404 if not the user's."""
        if not await profiles.delete_goal(uuid.UUID(user.user_id), goal_id):
            raise NotFoundException("goal not found")

    @delete("/personality")
    async def forget_personality(
        self, profiles: ProfileStore, user: NamedDependency[Caller]
    ) -> None:
        """Forget the personality estimate and the observations behind it."""
        await profiles.forget_personality(uuid.UUID(user.user_id))
